"""S10 Prediction circuit break: a proxy sheds load and cuts off failing predictors."""
