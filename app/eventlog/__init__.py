"""The durable event log (optional): POST /v1/events publishes to NATS JetStream, `reco consume` stores."""
