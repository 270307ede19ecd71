"""Long videos as jobs: an HTTP job API and Celery workers on Redis in front of TorchServe.

A video is uploaded once (``api``), planned once over its whole length with the server's own sampling rules,
cut into pieces at keyframes without re-encoding (``video``), and each piece is scored by TorchServe as an
ordinary request asking for exactly its planned frames (``sampling``'s ``at_frames``), so TorchServe batches
them with the rest of its traffic. The pieces' answers are merged into one timeline with the same schema as
a synchronous video answer (``merge``). TorchServe stays the one place where the network runs.

=================  ======================================================================================
``settings``       every knob, from the environment (``DEEPFAKE_JOBS_*``)
``keys``           the job API's bearer keys and webhook secrets (a file made at first start)
``store``          job records, pieces and state changes in Redis
``video``          a long video's plan: sampled frames, pieces cut at keyframes
``scoring``        TorchServe for the workers: renewed keys, the pinned version, one piece's request
``merge``          pieces' answers -> one verdict in the original video's frames and times
``tasks``          the Celery app and its tasks (plan, score a piece, finish, deliver the webhook)
``webhooks``       signing, checking and the allow-list of a job's webhook
``metrics``        job counts, queue length, durations and frame rate in Prometheus form
``api``            the FastAPI app: POST/GET/DELETE /jobs, /metrics
``service``        ``make jobs``: Redis, the workers and the API, started and stopped together
``client``         what ``scripts/score.py`` uses: photos to TorchServe, long videos as jobs
``plot``           a verdict's timeline as a PNG
=================  ======================================================================================
"""
