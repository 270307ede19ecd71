"""Training and evaluation of the detector that ``deepfake_detector`` serves.

Kept outside the served package, so no archive carries training code. Everything that touches pixels is
imported from the server's own modules (``deepfake_detector.faces``, ``deepfake_detector.transforms``,
``deepfake_detector.media``), and checkpoints are written with ``deepfake_detector.weights.save_weights``,
so a trained file is an archive's weights file as it stands.

Modules, one job each: ``index`` (the crop index CSV and its splits), ``prepare`` (media -> face crops),
``augment`` (the design's augmentations), ``blending`` (self-blended pseudo-fakes), ``data`` (crops ->
batches), ``pretrained`` (offline ImageNet weights), ``trainer`` (the training loop and its regularisation),
``metrics`` (accuracy, ROC AUC, log loss, ECE, temperature), ``evaluation`` (a model on a split, per frame and
per video), ``onnx_export`` (ONNX with a parity check).
"""
