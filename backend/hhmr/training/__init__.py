"""Training the diffusion prior on synthetic hands streamed from the pose prior."""
