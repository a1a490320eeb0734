"""The wav2lip engine: a public Wav2Lip checkpoint run over a video (engine, model, audio)."""
