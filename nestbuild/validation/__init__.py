"""Stage 2: what the derived layers change against the base, judged by the policy and the lints."""
