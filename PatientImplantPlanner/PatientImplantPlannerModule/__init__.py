"""The code of the Slicer module file ``PatientImplantPlanner.py``, split by job (GUI, logic, self-test, ...).

Slicer loads ``PatientImplantPlanner.py``, which imports the module's classes from here so that Slicer finds them in
its namespace. Like the module file, these files run only inside Slicer (they import ``slicer``, ``qt``, ``vtk``);
the Qt-free engine they call is ``PatientImplantPlannerLib``.
"""
