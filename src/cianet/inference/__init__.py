"""Inference with a trained model: bundles, the Predictor, batch prediction, overlays and ONNX export.

Nothing here imports :mod:`cianet.training` or :mod:`cianet.evaluation`: a bundle is all prediction needs.
"""
