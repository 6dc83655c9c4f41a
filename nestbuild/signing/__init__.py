"""Stage 3: keys, signatures and attestations, in the formats cosign and containers/image use."""
