//! A fault-injecting proxy and a fast in-memory stand-in for SQS and DynamoDB (in progress).
