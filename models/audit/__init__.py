"""The privacy audit: what an attacker learns from a bundle's released features."""
