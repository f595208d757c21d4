"""The Transformer shared by training and translation, its layers and the residual/norm module."""
