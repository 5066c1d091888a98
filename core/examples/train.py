"""Example shoal function: logistic regression on synthetic data, with NumPy only.

Run it with `shoal run train --param lr=0.05`, or map it over learning rates from Python:

    import shoal
    train = shoal.project().get_function("train")
    runs = train.map([{"lr": lr} for lr in (0.01, 0.05, 0.1, 0.5)])
"""

import numpy as np

import shoal


@shoal.function(replicas=(0, 2), cpu="500m", memory="512Mi", description="logistic regression demo")
def train(ctx: shoal.Context, lr: float = 0.1, epochs: int = 200, samples: int = 2000, seed: int = 0):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(samples, 5))
    true_weights = np.array([1.5, -2.0, 0.5, 0.0, 1.0])
    labels = (features @ true_weights + rng.normal(scale=0.5, size=samples) > 0).astype(float)

    weights = np.zeros(5)
    for epoch in range(epochs):
        predictions = 1 / (1 + np.exp(-(features @ weights)))
        gradient = features.T @ (predictions - labels) / samples
        weights -= lr * gradient
        if epoch % 20 == 0:
            loss = -np.mean(labels * np.log(predictions + 1e-9) + (1 - labels) * np.log(1 - predictions + 1e-9))
            ctx.log_metric("loss", loss, step=epoch)
            ctx.report(-loss, step=epoch)

    accuracy = float(np.mean((features @ weights > 0) == labels))
    ctx.logger.info("lr=%s epochs=%s accuracy=%.3f", lr, epochs, accuracy)
    ctx.log_artifact("weights", weights)
    return {"accuracy": accuracy, "weight_error": float(np.linalg.norm(weights - true_weights))}
