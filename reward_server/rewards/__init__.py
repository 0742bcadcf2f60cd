"""Pure reward rules (SPEC §1-§5, §7, §8): no torch, no HTTP, only text in and numbers out.

Import from the submodules (``reward_server.rewards.rules`` and friends); this package file stays
empty of imports so that importing one rule never drags in shapely or numpy for the others.
"""
