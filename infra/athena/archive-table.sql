-- The archive as an Athena table (docs/operating.md, "The archive"). Replace BUCKET and PREFIX
-- with the stack's ArchiveUrl output (s3://BUCKET/PREFIX). Partition projection finds the
-- dt=/hour= partitions by themselves: no crawler, no MSCK REPAIR. make test reads real archive
-- objects with these columns through DuckDB (infra/tests/test_local_stack.py).
CREATE EXTERNAL TABLE IF NOT EXISTS tmc_archive (
  id           string,  -- the TMC message id, exact (decimal text)
  id_problem   string,  -- why a message has no usable id (then id is null)
  topic        string,  -- e.g. taobao_trade_TradeSuccess
  user_id      string,  -- the seller's user id, exact
  user_nick    string,
  pub_time     string,  -- yyyy-MM-dd HH:mm:ss, GMT+8, as TMC sent it
  pub_app_key  string,
  content      string,  -- the event's JSON, byte for byte
  group_name   string,  -- the TMC group it was consumed from
  consumed_at  string,  -- RFC 3339, UTC
  batch        string,  -- the relay batch (also the object's name)
  rest         string   -- every other field of the message as TMC sent it, as JSON text
)
PARTITIONED BY (dt string, hour string)
ROW FORMAT SERDE 'org.openx.data.jsonserde.JsonSerDe'
LOCATION 's3://BUCKET/PREFIX'
TBLPROPERTIES (
  'projection.enabled' = 'true',
  'projection.dt.type' = 'date',
  'projection.dt.format' = 'yyyy-MM-dd',
  'projection.dt.range' = '2026-01-01,NOW',
  'projection.dt.interval' = '1',
  'projection.dt.interval.unit' = 'DAYS',
  'projection.hour.type' = 'integer',
  'projection.hour.range' = '0,23',
  'projection.hour.digits' = '2',
  'storage.location.template' = 's3://BUCKET/PREFIXdt=${dt}/hour=${hour}/'
);
