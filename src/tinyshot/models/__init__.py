"""Networks: the few-shot teacher (backbone + ProtoNet head) and the tiny students (Conv4, ResNet12)."""
