"""What the contracts share, knowing none of them: the batch driver, callbacks, the checkpoint store,
policies, metrics, errors and the engine client."""
