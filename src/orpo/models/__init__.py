"""Models: loading them (hubs, PEFT, quantization), their kinds (causal LM, vision-language,
encoder-decoder) with what each needs to tokenize, batch and generate, and trying a trained model.
"""
