"""The pure core of ``forewarn deliver``: destinations and what goes where, when an action
may be sent, how failures are retried and when a destination is paused, and the signed
request itself. No Kafka, no HTTP client, no metrics here: ``forewarn/streams/delivery/``
is the shell around it."""
