"""What a run is asked to do: the option fields, ``ORPOConfig``, the option table every flag and YAML key
comes from, the conversion of given settings into those objects, and the recipes shipped by name.

Nothing here loads a model or reads data; every other layer reads its settings from here.
"""
