"""Scores of synthetic sample sets against the real slices they imitate (`brainspade evaluate-generators`).

metrics holds every score of the project (overlap, label statistics, image fidelity and diversity,
FID/KID, memorisation), as plain formulas over arrays and tensors. Around it: features (the network
whose features FID/KID compare), consistency (a segmenter run on the synthetic images), sample_sets
(reading a set and its real references), style_match (the generator's styles against real sites),
scoring (one set end to end) and report (figures, report.md, the summary table).
"""
