"""Putting a trained model to use: everything that starts from a checkpoint.

  evaluate.py  `eval`: MSE, RMSE, MAE and R² in each target's own units, summed a block
               at a time (one block when the table fits data.memory_budget); interval coverage
  predict.py   `predict`: rows with predictions (and intervals) appended, streamed in
               chunks, all or nothing; `predict_frame` for a DataFrame (the Python API)
  mlflow_model.py  the MLflow pyfunc model a run logs (`output.mlflow`), over predict
  scoring.py   predictions in the targets' units; a non-finite one is an error naming its row
  explain.py   `explain`: permutation importance of each original column
  intervals.py split-conformal prediction intervals from the validation rows' residuals
  export.py    `export`: the model as ONNX, compared with predict before it is written
  onnx_graph.py  the ONNX graph: raw columns -> fill, standardise, one-hot -> network -> units
  onnx_embeddings.py  its nodes for the numeric and categorical embeddings
  onnx_nodes.py  the graph both write into (nodes, constants, fresh names)

Imports outputs/ (checkpoints), data/, models/; never training/.
"""
