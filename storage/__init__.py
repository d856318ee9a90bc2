"""Where the weights come from and how they are kept: the formats of model files and the storage
behind utils.load_model, which is the way in.

- checkpoint.py: TensorFlow's checkpoint, OpenAI's release (read without TensorFlow).
- safetensors_file.py: HuggingFace's safetensors files, read and written.
- hf.py: HuggingFace's model folders (config.json, model.safetensors, the tokenizer), the hub's names.
- hub.py: a model from the hub, or in HuggingFace's layout, to our arrays.
- npy_copy.py: the converted copy, one .npy file per tensor, memory-mapped by every later load.
- download.py: downloads that resume, retry and check the sha256; folders as mirrors.
- model_folder.py: what every model folder shares: its tensors' shapes, its lock.
- run_folder.py: files saved together, all or none, and checked when read again (a training run's).
- files.py: writes that survive a crash (fsync, rename), room on the disk, sha256.
"""
