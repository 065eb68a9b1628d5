"""Usage accounting: what each request used (`record.UsageRecord`), what it cost
(`prices.PriceMap`), and the batched writer that turns records into spend_logs rows and
key/user/team spend (`writer.UsageWriter`). The SQL lives in `proxy.db.spend`.

The hot path only builds a record and calls `UsageWriter.record()`: no database, no await.
(Nothing is re-exported here: `proxy.db.spend` imports `record`, and `writer` imports it back.)"""
