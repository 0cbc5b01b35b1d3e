"""The fractal generator: FractalDB, OFDB and 1p-frac, exactly the code generate_synthetic runs.

    generate.generate_dataset(cfg, seed, out_dir) -> manifest dict

writes out_dir/manifest.json and out_dir/preview.png, and the images as shards or PNG
files when synthetic.store asks. generate.py: the layout; search.py: which systems become
categories; draws.py and ifs.py: the random draws and the systems; render.py (with
kernels.py, its compiled loops): how images are drawn; source.py: any image from the
manifest; png.py and parallel.py: files and worker processes.
"""
