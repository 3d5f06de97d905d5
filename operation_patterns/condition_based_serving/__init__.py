"""O7 Condition-based serving: the request's hour, region or device picks the model by rule."""
