"""``forewarn deliver``: the Kafka and HTTP shell around ``forewarn.delivery``."""
