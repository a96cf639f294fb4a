"""Speech separation: MossFormer2 and MossFormer on the shared attention core (`panformer.speech`)."""
