"""Learning histories: the Arrow shard schema, the catalog and writer (`shards`), and the
streaming loader that turns a catalog into training samples (`loader`). Below `algorithms/`
and above `envs/`: nothing here imports the algorithms or the platform (Ray only inside
`shards.ray_dataset` and `arrow_datasource`, for Ray Data readers). `export` copies histories
into open formats (Parquet with an episode index, Minari) with a dataset card."""
