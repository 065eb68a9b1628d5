"""Wire models only. They validate what clients send; unknown fields pass through untouched."""
