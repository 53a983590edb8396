"""privedge: mosquitto configuration and tooling (start a local broker, enrol devices)."""
