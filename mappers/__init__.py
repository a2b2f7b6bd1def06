"""Device mappers: small processes that talk to devices and publish readings over MQTT."""
