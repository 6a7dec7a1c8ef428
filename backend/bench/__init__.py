"""Label-efficiency benchmarks: simulated active-learning cycles where the ground truth plays the annotator."""
