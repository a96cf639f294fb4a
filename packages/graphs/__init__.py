"""Graphs: GPS-style graph transformers for static graphs, SAG-ViT image patch graphs and Todyformer-style
dynamic-graph link prediction and flow-graph intrusion detection (self-supervised anomaly scores and a classifier),
all on the shared attention core."""

import warnings

# torch_geometric scripts a few modules at import time, which the installed torch flags as deprecated;
# the warning says nothing about the user's data and would break the CLI's one-line error contract.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
