"""Bench-only preview of the per-segment attention wiring (the ``*-seg`` variants of bench_orpo.py).

Until the collators emit :class:`orpo.segments.Segments` and the scorer passes them to the model
(the wiring described with orpo.attention), this routes one trainer's packed forwards through
:mod:`orpo.attention`: it switches the model to the per-segment implementation and derives each
batch's segments on the host from the packed row.  The host reads (``tolist``) and the
patching are the preview's, not the design's: the collator knows the lengths already.
"""

from __future__ import annotations

from typing import Any


def _shared_segments(batch: dict[str, Any]) -> Any:
    from orpo.segments import shared_prompt_segments

    pairs, kinds = batch["shared_pair"][0].tolist(), batch["shared_kind"][0].tolist()
    count = max(pairs) + 1
    lengths = [[0] * count for _ in range(3)]  # prompt, chosen, rejected per pair
    for pair, kind in zip(pairs, kinds, strict=True):
        if pair >= 0:
            lengths[kind][pair] += 1
    return shared_prompt_segments(*lengths, total=len(pairs))


def route_packed_forwards(trainer: Any, layout_name: str) -> str:
    """Make ``trainer``'s packed ("packed") or shared-prompt ("shared_prompt") batches attend per
    segment; returns the implementation name, or raises SystemExit with the reason it cannot."""
    from orpo import attention, scoring
    from orpo.layouts import Layout
    from orpo.segments import segments_from_position_ids

    layout = Layout(layout_name)
    model = trainer.model
    route = attention.segment_route(model, layout)
    if route.implementation is None:
        raise SystemExit(f"{layout.value}: no per-segment attention for this model: {route.reason}")
    attention.use_segment_attention(model, route.implementation)
    # the scorer's own checks ask for the base implementation by name
    scoring._attn_implementation = attention.base_implementation  # type: ignore[assignment]
    if layout is Layout.SHARED_PROMPT:

        def shared_inputs(batch: dict[str, Any], _implementation: Any, _dtype: Any) -> dict[str, Any]:
            segments = _shared_segments(batch).to(batch["input_ids"].device)
            inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}
            return {**inputs, **attention.segment_forward_kwargs(segments)}

        scoring.shared_inputs = shared_inputs  # type: ignore[assignment]
        return route.implementation
    forward = model.forward

    def packed_forward(*args: Any, **kwargs: Any) -> Any:
        positions = kwargs.get("position_ids")
        if positions is not None and kwargs.get("attention_mask") is None and positions.shape[0] == 1:
            segments = segments_from_position_ids(positions).to(positions.device)
            kwargs.update(attention.segment_forward_kwargs(segments))
        return forward(*args, **kwargs)

    model.forward = packed_forward
    return route.implementation
