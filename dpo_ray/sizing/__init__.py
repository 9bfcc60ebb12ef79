"""Pure estimates of a run's needs from its options and its models' config.json: model shapes (built on torch's meta
device, no weights), memory by part, ZeRO stage and reference sharding, engine lengths, each group's resources and
where Ray places them. No torch device, no Ray: planning/, campaign/, groups/ and workers/ all import it."""
