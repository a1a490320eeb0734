"""Media in and out through ffmpeg: probe, audio, decode, pingpong, encode, threads. Knows no engine."""
