"""Identity: who. Ed25519 keys, signed records, Noise handshakes and the secure stream."""
