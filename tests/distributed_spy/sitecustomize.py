"""Test spy for tests/test_distributed.py: with FASTMONAI_WRITE_LOG set, every cache entry written to disk (by any
process: training ranks, their fill workers) appends "pid key" to that file. Instrumentation of a test run only."""
import os

if os.environ.get('FASTMONAI_WRITE_LOG'):
    import fastMONAI.vision_cache as _cache
    _disk_put = _cache.VolumeCache._disk_put

    def _logged_disk_put(self, key, arr, meta):
        with open(os.environ['FASTMONAI_WRITE_LOG'], 'a') as f: f.write(f'{os.getpid()} {key}\n')
        return _disk_put(self, key, arr, meta)

    _cache.VolumeCache._disk_put = _logged_disk_put
