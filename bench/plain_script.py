"""The plain alternative for the end-to-end benchmark: what one writes by hand.

    python bench/plain_script.py data.csv

pandas.read_csv, standardise with the table's statistics, DataLoader(TensorDataset,
shuffle=True), the same 16 -> 64 -> 64 -> 1 MLP, Adam lr 1e-3, batch 1024, 3 epochs,
then torch.save of the weights. No checks, no metrics file, no resume.
"""

import sys

import pandas as pd
import torch
from torch.utils.data import DataLoader, TensorDataset

frame = pd.read_csv(sys.argv[1])
x = torch.tensor(frame.drop(columns="y").values, dtype=torch.float32)
y = torch.tensor(frame[["y"]].values, dtype=torch.float32)
x = (x - x.mean(0)) / x.std(0)
y = (y - y.mean()) / y.std()

torch.manual_seed(0)
model = torch.nn.Sequential(
    torch.nn.Linear(x.shape[1], 64),
    torch.nn.ReLU(),
    torch.nn.Linear(64, 64),
    torch.nn.ReLU(),
    torch.nn.Linear(64, 1),
)
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
loss_fn = torch.nn.MSELoss()
loader = DataLoader(TensorDataset(x, y), batch_size=1024, shuffle=True)
for epoch in range(3):
    total = 0.0
    for xb, yb in loader:
        loss = loss_fn(model(xb), yb)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item() * len(xb)
    print(f"epoch {epoch + 1}: train loss {total / len(x):.6f}")
torch.save(model.state_dict(), "plain_model.pt")
