"""The attention engine: tiled online-softmax attention (golden_model/intattn.py) in hardware."""
