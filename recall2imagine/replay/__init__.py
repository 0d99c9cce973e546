from recall2imagine.replay.memory import MemoryReplay

__all__ = ['MemoryReplay']
