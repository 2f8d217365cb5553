"""The machinery behind :func:`slift_plugin.rollout.rollout`, private to the distribution.

:mod:`slift_plugin.rollout` keeps the entry point and its public constants; the modules
here are what it is built from, one concern each, so that the torchsde adapter (whose
``sdeint`` must reproduce a rollout's values) imports named parts instead of reaching into
another module's private helpers. From the bottom up: :mod:`.noise` (one random stream per
block of samples), :mod:`.nonfinite` (blow-up detection), :mod:`.steps` (one step, eager
or replayed from a CUDA graph), :mod:`.arguments` (the up-front checks), :mod:`.sinks`
(finished chunks to the host), :mod:`.engine` (the chunk loop) and :mod:`.output` (the
labelled result, in memory or in a zarr store). The leading underscore is the contract:
names here may change with any release.
"""

# No names of its own: the modules are imported explicitly, like the adapters.
