"""Scores of synthetic sample sets against the real slices they imitate (`brainspade evaluate-generators`).

Each module takes plain arrays, tensors and settings: features (the network whose features FID/KID
compare), realism (FID, KID), diversity (MS-SSIM, intensity histograms), label_realism (tissue
volumes, lesion sizes, components and holes), consistency (a segmenter on the synthetic images),
memorisation (nearest training slices), sample_sets (reading a set and its real references),
scoring (one set end to end) and report (figures, report.md, the summary table).
"""
