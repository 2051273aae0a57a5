"""The cross-country elimination paper's published numbers (no JAX import, so that
benchmarks/search.py's parent process stays free of it)."""

#: The paper's published multiplication counts: (fwd, rev, Markowitz, AlphaGrad).
PAPER_MULTS: dict[str, tuple[int, int, int, int]] = {
    "RoeFlux_1d": (620, 364, 407, 320),
    "RoeFlux_3d": (1556, 979, 938, 811),
    "RobotArm_6DOF": (397, 301, 288, 231),
    "HumanHeartDipole": (240, 172, 194, 148),
    "PropaneCombustion": (151, 90, 111, 88),
    "BlackScholes_Jacobian": (545, 572, 350, 312),
    "MLP": (10930, 392, 4796, 389),
    "Encoder": (135010, 4688, 51869, 4656),
    "f": (17728, 8859, 12083, 6374),
    "g": (632, 566, 451, 417),
}
