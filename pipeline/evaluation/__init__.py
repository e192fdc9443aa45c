"""How well AGD reproduces CFG: FID through clean-fid, the MNIST judge, figures with bootstrap
intervals, the correction captured on held-out trajectories, and the reports and figures made from
them."""
