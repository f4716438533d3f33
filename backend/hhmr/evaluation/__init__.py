"""Measurements behind the model card: the pose prior (`prior`), each sampling task on held-out
synthetic hands (`tasks`), reconstruction on real photos (`photos`), latency and memory
(`bench`) and the baselines they are compared with (`baselines`)."""
