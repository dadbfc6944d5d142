"""A prototype of the conversation drawn by Qt Quick: a QML ListView of message cards over a QAbstractListModel.

See docs/PERFORMANCE.md ("Chat view prototype") for what it was measured against and what it decided.
"""
