"""Remotes: other stores reached over HTTP (`modelstore serve`), and clone/push/pull/fetch.

remotes.py keeps their names, URLs and tokens in config.json; client.py speaks HTTP;
wire.py frames chunk records; transfer.py moves the chunks a version lacks in parallel
batches; sync.py decides which versions, annotations and tags travel.
"""
