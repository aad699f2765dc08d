"""The reference for bench/time_to_quality.py: LightGBM with its defaults, as one writes it.

    python bench/lightgbm_script.py train.csv test.csv TARGET

Reads both tables with pandas, makes the text columns pandas categories (LightGBM's native
categorical features; the test table gets the training categories), fits
`lightgbm.LGBMRegressor()` with nothing changed, and prints the test R².
"""

import sys

import lightgbm
import numpy as np
import pandas as pd

train = pd.read_csv(sys.argv[1])
test = pd.read_csv(sys.argv[2])
target = sys.argv[3]
for name in train.columns:
    if not pd.api.types.is_numeric_dtype(train[name]):
        train[name] = train[name].astype("category")
        test[name] = pd.Categorical(test[name], categories=train[name].cat.categories)
model = lightgbm.LGBMRegressor(verbose=-1)
model.fit(train.drop(columns=target), train[target])
predicted = model.predict(test.drop(columns=target))
actual = test[target].to_numpy(dtype=float)
r2 = 1.0 - float(np.sum((actual - predicted) ** 2)) / float(np.sum((actual - actual.mean()) ** 2))
print(f"test R² {r2:.6f}")
