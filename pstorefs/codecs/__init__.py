"""The codecs a record may need: the compressors pstore offered (deflate, lzo, lz4,
zstd, 842; `compression`) and ramoops' Reed-Solomon ECC (`reed_solomon`). Pure
functions over bytes: no I/O, no knowledge of where the bytes came from."""
