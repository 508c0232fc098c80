"""The canonical table: every registered method with small settings that train on the tiny recipe.

tests/test_all_methods.py trains each for a few steps, checkpoints, resumes and compares with an
uninterrupted run. Add one entry per registered method: name -> recipe `methods:` options.
"""
SETTINGS: dict[str, dict] = {
}
