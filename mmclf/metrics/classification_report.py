"""Multi-class classification report as an `evaluate` metric.

Shipped inside mmclf and loaded by path (`evaluate.load("<package>/metrics/classification_report.py")`),
so it works offline; `evaluate.load("f1")` would fetch its script from the Hub.
"""

import datasets
import evaluate
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

_DESCRIPTION = """
Accuracy, macro- and weighted-averaged precision / recall / F1, per-class precision / recall /
F1 / support and the confusion matrix (rows: true class, columns: predicted class) of integer
class predictions. Classes with no true and no predicted row score 0 (zero_division=0).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted class indices.
    references (list of int): true class indices.
    num_classes (int, optional): size of the label set; per-class results and the confusion
        matrix cover classes 0 .. num_classes-1. Default: 1 + the largest index seen.
Returns:
    accuracy, macro_precision, macro_recall, macro_f1, weighted_precision, weighted_recall,
    weighted_f1 (floats); precision, recall, f1 (list of float per class), support (list of int
    per class), confusion_matrix (list of lists of int).
    Macro and weighted averages are over the classes present in references or predictions.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ClassificationReport(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, num_classes=None):
        if len(references) == 0:
            raise ValueError("classification report of zero rows")
        if num_classes is None:
            num_classes = 1 + max(max(predictions), max(references))
        all_classes = list(range(num_classes))
        result = {"accuracy": float(accuracy_score(references, predictions))}
        for average in ("macro", "weighted"):
            precision, recall, f1, _ = precision_recall_fscore_support(
                references, predictions, average=average, zero_division=0
            )
            result[f"{average}_precision"] = float(precision)
            result[f"{average}_recall"] = float(recall)
            result[f"{average}_f1"] = float(f1)
        precision, recall, f1, support = precision_recall_fscore_support(
            references, predictions, labels=all_classes, average=None, zero_division=0
        )
        result["precision"] = [float(v) for v in precision]
        result["recall"] = [float(v) for v in recall]
        result["f1"] = [float(v) for v in f1]
        result["support"] = [int(v) for v in support]
        result["confusion_matrix"] = confusion_matrix(references, predictions, labels=all_classes).tolist()
        return result
